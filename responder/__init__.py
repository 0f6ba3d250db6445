"""The responder core: intents, guards, the pure band planner and its
description codec, the get-plan-apply service, the compute adapter and the
audit trail. It imports nothing from handlers/ or main.py."""
