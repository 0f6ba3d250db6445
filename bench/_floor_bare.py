"""Cold-start floor 1: a bare functions-framework CloudEvent function."""
import functions_framework


@functions_framework.cloud_event
def handle(event):  # noqa: ANN001, ANN201
    return None
