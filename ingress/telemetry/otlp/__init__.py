"""OTLP encoders written straight to protobuf wire bytes and OTLP JSON, so exporting every span stays cheap."""
