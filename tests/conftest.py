pytest_plugins = ["tests.fixtures", "tests.collector.browser.fixtures", "tests.engines.spark_fixtures"]
