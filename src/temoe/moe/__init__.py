"""temoe.moe: supported MoE architectures (`arch`), masked re-routing (`routing`), the reversible wrapper with
restrict/trace (`wrap`), and LoRA setup (`lora`). See docs/foundation.md."""
