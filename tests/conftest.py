pytest_plugins = [
    "tests.fixtures",
    "tests.collector.browser.fixtures",
    "tests.sources.fixtures",
    "tests.lakehouse.fixtures",
    "tests.web.fixtures",
    "tests.engines.spark_fixtures",
]
