"""Running the proxy: settings, the supervisor, the admin endpoint, logging and metrics."""
