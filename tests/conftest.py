pytest_plugins = ["tests.fixtures", "tests.engines.spark_fixtures"]
