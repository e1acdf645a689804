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


class ProfileVersion(models.Model):
    """One version of a site de-identification profile: PS3.15 Basic plus options. Versions are
    never edited (a change is a new version), so every dataset's recorded profile can be traced;
    at most one version is active, and with none the settings' profile applies."""

    name = models.CharField(max_length=32)
    version = models.PositiveIntegerField()
    options = models.JSONField(default=list, blank=True)
    private_safelist = models.JSONField(
        default=list, blank=True, help_text='Retain Safe Private entries, "CREATOR:gggg,ee"'
    )
    note = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    active = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="deid_profile_version_once"),
            models.UniqueConstraint(
                fields=["active"], condition=models.Q(active=True), name="deid_one_active_profile"
            ),
        ]
        ordering = ["name", "-version"]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"
