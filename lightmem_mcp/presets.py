"""Built-in data the settings fall back to: LLM provider presets and model list prices."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class LLMPreset:
    """Defaults of one LLM provider; every value can be overridden."""

    base_url: str | None
    model: str | None
    auth_header: str = "Authorization"
    auth_scheme: str = "Bearer"
    needs_key: bool = True
    hint: str = ""


LLM_PRESETS: dict[str, LLMPreset] = {
    "deepseek": LLMPreset("https://api.deepseek.com", "deepseek-flash"),
    "huawei-maas": LLMPreset(
        "https://api.modelarts-maas.com/v1",
        None,
        hint="the model name as shown in the ModelArts MaaS console, e.g. DeepSeek-V3",
    ),
    "pangu": LLMPreset(
        None,
        None,
        auth_header="X-Auth-Token",
        auth_scheme="",
        hint="the Pangu endpoint URL of your region and the model; the key is an IAM token, or set "
        "LIGHTMEM_LLM_AUTH_HEADER=X-Apig-AppCode for an AppCode",
    ),
    "openai": LLMPreset("https://api.openai.com/v1", "gpt-4o-mini"),
    "openai-compatible": LLMPreset(
        None, None, needs_key=False, hint="e.g. http://localhost:11434/v1 for Ollama, and the model name"
    ),
}


class ModelPrice(BaseModel):
    """What one model costs per 1M tokens, as its provider bills it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_cache_miss: float = Field(ge=0, description="Per 1M prompt tokens not served from the provider's cache.")
    input_cache_hit: float = Field(ge=0, description="Per 1M prompt tokens served from the cache.")
    output: float = Field(ge=0, description="Per 1M completion tokens.")
    currency: str | None = Field(
        default=None, pattern=r"^[A-Z]{3}$", description="ISO 4217 code; default LIGHTMEM_PRICE_CURRENCY."
    )


# Official list prices, peak-hour where a provider has two (see the README's "Cost accounting").
# Keys are `<provider>/<model>` as the usage ledger records them; lookups ignore case.
DEFAULT_PRICES: Mapping[str, ModelPrice] = MappingProxyType(
    {
        # DeepSeek, https://api-docs.deepseek.com/quick_start/pricing (read 2026-11-27): peak rates;
        # off-peak is half. deepseek-v4-flash is a legacy name billed at the deepseek-flash price.
        "deepseek/deepseek-flash": ModelPrice(
            input_cache_miss=0.30, input_cache_hit=0.006, output=1.20, currency="USD"
        ),
        "deepseek/deepseek-v4-flash": ModelPrice(
            input_cache_miss=0.30, input_cache_hit=0.006, output=1.20, currency="USD"
        ),
        "deepseek/deepseek-v4-pro": ModelPrice(
            input_cache_miss=1.32, input_cache_hit=0.044, output=3.96, currency="USD"
        ),
        # Huawei Cloud ModelArts Studio (MaaS), CN-Hong Kong,
        # https://support.huaweicloud.com/intl/en-us/price-modelarts/price-modelarts-0047.html (page of
        # 2025-10-14, read 2026-11-27): USD per 1,000 tokens there, no separate cache-hit price.
        "huawei-maas/deepseek-v3.1": ModelPrice(
            input_cache_miss=0.539, input_cache_hit=0.539, output=1.617, currency="USD"
        ),
        "huawei-maas/qwen3-32b": ModelPrice(input_cache_miss=0.27, input_cache_hit=0.27, output=1.078, currency="USD"),
    }
)
