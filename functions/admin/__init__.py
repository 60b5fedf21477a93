"""The admin function: the privacy API (regulations to delete or suppress a person's events).

`routes` is the API itself, which the ingest app also serves when ADMIN_TOKEN is set (locally
and in containers); `app` builds an app of only those routes for the AdminFunction on AWS,
whose role may write under the regulations prefix while the ingest function keeps no S3 access.
"""
