"""`python -m hybridserve ...`: the click CLI without the console script.

The local backend starts model servers as ``[sys.executable, "-m", "hybridserve", ...]`` so a
child runs the same interpreter and code as its parent, installed or not.
"""

from hybridserve.cli import main

if __name__ == "__main__":
    main()
