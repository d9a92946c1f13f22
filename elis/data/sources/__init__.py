"""Source loaders: each yields ``RawPair``s and reports the rows it could not use."""
