"""Run under torchrun with 2 processes: tensor-parallel forward/backward equal the plain model's.

Exits non-zero (an AssertionError) on any mismatch; prints 'tp ok' on rank 0 otherwise.
"""

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from modelworks.models.gpt import GPT, GPTConfig
from modelworks.train.parallel import apply_tensor_parallel

dist.init_process_group("gloo")
mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("tp",))
cfg = GPTConfig(vocab_size=64, context_len=16, n_layer=2, n_head=4, n_kv_head=2, d_model=32)
torch.manual_seed(0)
plain, tp = GPT(cfg), GPT(cfg)
tp.load_state_dict(plain.state_dict())
apply_tensor_parallel(tp, mesh)
idx = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(1))
out_plain, out_tp = plain(idx), tp(idx)
assert torch.allclose(out_plain, out_tp, atol=1e-5), (out_plain - out_tp).abs().max()
out_plain.logsumexp(-1).mean().backward()
out_tp.logsumexp(-1).mean().backward()
grads = dict(plain.named_parameters())
for name, p in tp.named_parameters():
    g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
    assert torch.allclose(grads[name].grad, g, atol=1e-5), name
    if name.endswith("attn.wq.weight"):
        assert p.to_local().shape[0] == cfg.d_model // 2  # really sharded, half the heads each
if dist.get_rank() == 0:
    print("tp ok")
dist.destroy_process_group()
