"""`python -m hybridserve.cli ...`."""

from hybridserve.cli import main

if __name__ == "__main__":
    main()
