"""`python -m clip_robust_ext` = `clipx`."""

from .cli import main

if __name__ == "__main__":
    main()
