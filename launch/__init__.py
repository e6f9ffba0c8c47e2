"""Process launch helpers: start the product's entry points with a faster memory allocator (see allocator.py)."""
