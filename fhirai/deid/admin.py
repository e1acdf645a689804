from __future__ import annotations

from django import forms
from django.contrib import admin, messages

from fhirai.deid.models import ProfileVersion, VaultAccess
from fhirai.deid.profile import OPTIONS
from fhirai.deid.versions import (
    InvalidProfile,
    profile_check,
    profile_version_activate,
    profile_version_create,
)


@admin.register(VaultAccess)
class VaultAccessAdmin(admin.ModelAdmin):
    """Who read the vault, when, for what: read-only. The vault itself is not shown anywhere."""

    list_display = ("at", "kind", "pseudonym", "purpose", "found")
    list_filter = ("kind", "purpose", "found")
    date_hierarchy = "at"

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


class ProfileVersionForm(forms.ModelForm):
    options = forms.MultipleChoiceField(
        choices=[(o, o) for o in OPTIONS], required=False, widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = ProfileVersion
        fields = ("name", "options", "private_safelist", "note")

    def clean(self):  # type: ignore[no-untyped-def]
        data = super().clean()
        try:
            profile_check(data.get("options") or (), data.get("private_safelist") or [])
        except InvalidProfile as exc:
            raise forms.ValidationError(str(exc)) from None
        return data


@admin.register(ProfileVersion)
class ProfileVersionAdmin(admin.ModelAdmin):
    """Profiles are versioned: adding saves the next version of that name; versions are never
    edited; "activate" makes one the site's profile (the next studies use it)."""

    form = ProfileVersionForm
    list_display = ("name", "version", "active", "options", "created_at")
    list_filter = ("name", "active")
    actions = ["activate"]

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        if obj is None:
            return ("version", "active", "created_at")
        return [f.name for f in ProfileVersion._meta.fields]

    def has_delete_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def save_model(self, request, obj, form, change) -> None:  # type: ignore[no-untyped-def]
        if change:
            return  # versions are immutable
        row = profile_version_create(
            obj.name, options=obj.options, private_safelist=obj.private_safelist, note=obj.note
        )
        obj.pk, obj.version = row.pk, row.version

    @admin.action(description="Activate the selected version (the next studies use it)")
    def activate(self, request, queryset) -> None:  # type: ignore[no-untyped-def]
        if queryset.count() != 1:
            self.message_user(request, "select exactly one version", level=messages.ERROR)
            return
        profile_version_activate(queryset.first().pk)
        self.message_user(request, f"{queryset.first()} is now the site's de-identification profile")
