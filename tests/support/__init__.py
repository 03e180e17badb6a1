"""Tools the tests and benchmarks share: emulators of the services the pipeline talks to."""
