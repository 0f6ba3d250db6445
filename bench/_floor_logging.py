"""Cold-start floor 2: the bare function plus google-cloud-logging's
structured handler set up (what the responder's audit trail needs)."""
import logging
import sys

import functions_framework
from google.cloud.logging_v2.handlers import StructuredLogHandler

logging.getLogger().addHandler(StructuredLogHandler(stream=sys.stdout))
logging.getLogger().setLevel(logging.INFO)


@functions_framework.cloud_event
def handle(event):  # noqa: ANN001, ANN201
    logging.getLogger("floor").info("handled")
