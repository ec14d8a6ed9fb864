"""A Python ModelServer that speaks TensorFlow Serving's gRPC and REST APIs.

Run it with ``python -m serving.model_server``; see serving/README.md.
"""
