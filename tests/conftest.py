pytest_plugins = ["tests.fixtures", "tests.lakehouse.fixtures"]
