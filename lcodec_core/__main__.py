"""``python -m lcodec_core`` (and the ``lcodec`` console script)."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
