# Gunicorn picks this file up when started from api-service/; the settings live
# in the package so installed images and `analytics-api serve` use the same ones.
from api_service.ops.gunicorn_conf import *  # noqa: F403
