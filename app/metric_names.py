"""The names in the app's /metrics that someone outside the app reads.

`app.metrics` writes these series and `modelship.canary_analysis` reads them to judge a
canary, so they are defined once here, with the routes whose requests are the traffic a
canary is judged on (scoring, not probes or /metrics scrapes). Pure constants: the deploy
side imports this without Flask.
"""

REQUESTS = "http_requests_total"
LATENCY = "http_request_duration_seconds"
PREDICTIONS = "model_predictions_total"

SCORE_ROUTE = "/score"
INFER_ROUTE = "/v2/models/<model_name>/infer"
VERSIONED_INFER_ROUTE = "/v2/models/<model_name>/versions/<model_version>/infer"
SCORING_ROUTES = frozenset({SCORE_ROUTE, INFER_ROUTE, VERSIONED_INFER_ROUTE})
