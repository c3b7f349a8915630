"""`llava-mini-jax serve`: an OpenAI-compatible HTTP server over the continuous-batching engine
(`llava_mini_jax.engine`), with Prometheus metrics and a chat page.

Modules: `protocol` (the request format and its errors), `media` (data URLs, local files, pixel
limit), `service` (preprocessing as `ChatSession`, engine, streamed text), `metrics`, `app` (the
Starlette routes), `cli` (the subcommand); `static/` holds the page (plain HTML / JS / CSS).
"""
