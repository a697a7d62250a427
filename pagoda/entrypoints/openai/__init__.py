"""The OpenAI-compatible server: api_server.py (app, start-up), serving_*.py (one endpoint family each),
protocol.py (request bodies), errors.py, middleware.py, cli_args.py; the request limits (limits.py), the
slow-client protections (http_protocol.py, middleware.py), tokenizer work off the event loop (offload.py)
and request chat templates in a sandbox process (template_sandbox.py, template_worker.py)."""
