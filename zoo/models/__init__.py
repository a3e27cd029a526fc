"""The models: one file each, registered under the file's name (`zoo/models/avae.py` -> "avae").

Every module here is a model; `zoo.registry` imports them all, so adding a model is writing one file.
"""
