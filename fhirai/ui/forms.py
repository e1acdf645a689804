"""The console's forms: each checks its input on save and says what is wrong in words."""

from __future__ import annotations

import json
from typing import Any

from django import forms

from fhirai.deid.profile import OPTIONS
from fhirai.webhooks.models import EVENTS, FILTER_KEYS, WebhookSubscription


class DestinationForm(forms.Form):
    """A destination's address and switch (the name and address are checked by the domain)."""

    name = forms.CharField(max_length=64, help_text="fhir-upstream, or mllp:NAME for an HL7 peer")
    address = forms.CharField(max_length=2000, help_text="the FHIR base URL, or HOST:PORT")
    enabled = forms.BooleanField(required=False)


class FilterField(forms.CharField):
    """The subscription filter as JSON text: {"model": "...", "source": "..."} (values or lists)."""

    def prepare_value(self, value: Any) -> str:
        if isinstance(value, dict):
            return json.dumps(value) if value else ""
        return super().prepare_value(value)

    def to_python(self, value: Any) -> Any:
        text = (super().to_python(value) or "").strip()
        if not text:
            return {}
        try:
            return json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"not JSON: {exc}") from None


class SubscriptionForm(forms.ModelForm):
    url = forms.URLField(max_length=2000, assume_scheme="https", help_text="the receiver's endpoint")
    events = forms.MultipleChoiceField(choices=[(e, e) for e in EVENTS], widget=forms.CheckboxSelectMultiple)
    filter = FilterField(
        required=False,
        help_text=f'JSON with keys among {", ".join(FILTER_KEYS)}, e.g. {{"model": "ct-lung"}}; empty: every event',
    )

    class Meta:
        model = WebhookSubscription
        fields = ["name", "url", "events", "filter", "include_phi", "enabled"]
        help_texts = {
            "include_phi": "add patient names, MRNs, accession numbers and birth dates to the payloads",
        }


def _list(text: str) -> list[str]:
    return [v.strip() for v in text.replace("\n", ",").split(",") if v.strip()]


class AcceptsForm(forms.Form):
    """What a model is routed, as comma-separated lists (checked by the domain on save)."""

    modalities = forms.CharField(required=False, max_length=500)
    body_parts = forms.CharField(required=False, max_length=500)
    sop_classes = forms.CharField(required=False, max_length=4000)
    message_types = forms.CharField(required=False, max_length=500)

    def accepts(self) -> dict[str, list[str]]:
        return {
            k: _list(self.cleaned_data[k])
            for k in ("modalities", "body_parts", "sop_classes", "message_types")
        }


class ProfileForm(forms.Form):
    """A new version of a site de-identification profile."""

    name = forms.CharField(max_length=32, initial="site")
    options = forms.MultipleChoiceField(
        choices=[(o, o) for o in OPTIONS], required=False, widget=forms.CheckboxSelectMultiple
    )
    private_safelist = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 40}),
        help_text="Retain Safe Private entries, one CREATOR:gggg,ee per line",
    )
    note = forms.CharField(required=False, max_length=500)
    activate = forms.BooleanField(required=False, initial=True, help_text="use it for the next items")

    def safelist(self) -> list[str]:
        return [line.strip() for line in self.cleaned_data["private_safelist"].splitlines() if line.strip()]
