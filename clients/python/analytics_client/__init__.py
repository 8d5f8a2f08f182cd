"""analytics-client: the analytics platform's read-only HTTP API from Python."""

from analytics_client.auth import ClientCredentials, StaticToken, TokenProvider
from analytics_client.client import AnalyticsClient
from analytics_client.errors import AnalyticsError
from analytics_client.result import QueryResult
from analytics_client.retry import RetryPolicy, parse_retry_after

__all__ = [
    "AnalyticsClient",
    "AnalyticsError",
    "ClientCredentials",
    "QueryResult",
    "RetryPolicy",
    "StaticToken",
    "TokenProvider",
    "parse_retry_after",
]
