"""The application's side: asking a served model for forecasts.

`forecast.client` asks any TensorFlow Serving-compatible server (gRPC or REST)
for the next 24 hours from a file of recent Jena readings. It uses the
pipeline's library modules (the schema, the hourly preparation) and never a
stage's outputs.
"""
