"""One module per subcommand; each exposes `register(app)` and keeps its top-level imports light."""
