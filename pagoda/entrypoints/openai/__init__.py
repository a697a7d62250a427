"""The OpenAI-compatible server: api_server.py (app, start-up), serving_*.py (one endpoint family each),
protocol.py (request bodies), errors.py, middleware.py, cli_args.py."""
