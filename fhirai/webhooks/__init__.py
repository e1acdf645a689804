"""Webhooks: fhirai's events (report.created, item.failed, item.completed, delivery.failed) sent
to subscribed URLs through a durable outbox, and the seen-id record that protects /hooks/<source>
from replays. The wire format (Standard Webhooks headers, HTTP) lives in integrations/webhooks."""
