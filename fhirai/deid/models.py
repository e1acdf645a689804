from __future__ import annotations

from django.db import models


class VaultEntry(models.Model):
    """Pseudonym -> original, for re-identification at write-back only. Lives on the trusted side
    with the identified rows; never read by the inference tier."""

    kind = models.CharField(max_length=32)
    pseudonym = models.CharField(max_length=64)
    original = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "pseudonym"], name="vault_kind_pseudonym")]
        verbose_name_plural = "vault entries"

    def __str__(self) -> str:
        return f"{self.kind}:{self.pseudonym}"


class VaultAccess(models.Model):
    """One read of the vault: who asked (the stage), for what, and whether it was there."""

    at = models.DateTimeField()
    kind = models.CharField(max_length=32)
    pseudonym = models.CharField(max_length=64)
    purpose = models.CharField(max_length=64)
    found = models.BooleanField(default=True)

    class Meta:
        indexes = [models.Index(fields=["at"])]
        verbose_name_plural = "vault accesses"
