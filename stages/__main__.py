"""``python -m stages NAME --input ... --output DIR``: same flags as ``lmforge stage``."""

from stages.cli import main

if __name__ == "__main__":
    main()
