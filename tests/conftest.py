pytest_plugins = [
    "tests.fixtures",
    "tests.sources.fixtures",
]
