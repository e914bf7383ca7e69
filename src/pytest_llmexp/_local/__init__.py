"""The embedded model: Gemma 3 270M served by llama.cpp's OpenAI-compatible server.

Owns the server process, its weights and its lifeline (``server``), and the program that
runs in that process (``main``, started with ``python -m``). It knows nothing of pytest; it
may import ``_run`` (the endpoint settings it hands out) and ``_util``.
"""
