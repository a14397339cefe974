"""Logic behind the lcodec dashboard: session state, background jobs, charts and attributions.

The page scripts in ``app/views`` only describe pages; everything they compute lives here.
Nothing in ``lcodec_core`` imports this package (the engine knows nothing of the UI).
"""
