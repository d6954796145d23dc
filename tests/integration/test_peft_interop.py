"""A selected plain-LoRA sub-adapter loads in PEFT and computes what our module computes."""

import torch
from torch import nn

import sqft_intel as sq

LOGIT_TOL = 1e-5  # fp32, same math in two libraries


def test_selected_sub_adapter_loads_in_peft(tmp_path, tiny_model_dir):
    from peft import PeftModel

    model, _ = sq.load_model(str(tiny_model_dir))
    sq.add_adapters_(model, sq.NLSConfig(mode="lora", rank_space=(8, 6, 4), alpha=16.0))
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, sq.ElasticLoraLinear):
            nn.init.normal_(m.lora_B, std=0.05)
    sq.set_active_ranks_(model, "heuristic")  # q/k/v at 6, up/down at 8
    sq.save_peft_adapter(model, tmp_path / "peft", base_model=str(tiny_model_dir), alpha=16.0)
    ids = torch.randint(300, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(input_ids=ids).logits
    base, _ = sq.load_model(str(tiny_model_dir))
    peft_model = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    q = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert q.lora_A["default"].weight.shape == (6, 64)
    with torch.no_grad():
        theirs = peft_model(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, atol=LOGIT_TOL, rtol=0)
