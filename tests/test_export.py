"""The /mydata summary is readable: UTC dates beside epoch values, stored lists as lists."""

from engine.export import readable


def test_epochs_get_utc_dates_and_json_columns_become_lists():
    summary = {
        "created_at": 0,
        "model_retention_seconds": 604800.0,
        "adapters": [{"id": "a", "losses": "[0.12, 0.08]", "created_at": 1795995560.5, "last_used_at": None}],
        "consents": [{"attested": "yes", "given_at": 86400, "withdrawn_at": None}],
    }
    assert readable(summary) == {
        "created_at": 0,
        "created_at_utc": "1970-01-01 00:00:00 UTC",
        "model_retention_seconds": 604800.0,
        "model_retention_days": 7.0,
        "adapters": [
            {
                "id": "a",
                "losses": [0.12, 0.08],
                "created_at": 1795995560.5,
                "created_at_utc": "2026-11-29 23:39:20 UTC",
                "last_used_at": None,
            }
        ],
        "consents": [
            {
                "attested": "yes",
                "given_at": 86400,
                "given_at_utc": "1970-01-02 00:00:00 UTC",
                "withdrawn_at": None,
            }
        ],
    }
