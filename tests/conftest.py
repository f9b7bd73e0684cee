import os
import sys

# Tests import the top-level scripts and packages as a user's `python ideal.py` would.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
