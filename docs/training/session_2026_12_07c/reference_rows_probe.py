"""How much of the realtime student's layout the reference tokens' rows and columns are (CPU, ~10 s).

    python -c "import sys; sys.path.insert(0, '.'); import iasa_cli; iasa_cli.register_package(); exec(open('docs/training/session_2026_12_07c/reference_rows_probe.py').read())"
"""
from iasa.attention.pose_layout import SparseAttentionConfig, build_pose_layout
from iasa.pose.synthetic import talking_pose
from iasa.training.teacher_data import token_grid

pose = talking_pose(n_frames=81, width=832, height=480)
grid = token_grid((21, 60, 104), ref_tokens=True)
plan = build_pose_layout(pose, grid, SparseAttentionConfig(top_k=2, causal=True, block_size=128))
dense = plan.layout.to_dense().numpy()[0]
nb = dense.shape[0]
g = -(-grid.global_tokens // plan.layout.block_size)
rows = dense[:g].sum(); cols = dense[g:, :g].sum(); total = dense.sum()
print(f"blocks {nb}, global blocks {g}, kept pairs {int(total)}, global rows {int(rows)}, global cols (video rows) {int(cols)}, share {(rows + cols) / total:.3f}")
print("without global query rows (reference attends to itself only):", int(total - rows + dense[:g, :g].sum()), f"= {(total - rows + dense[:g, :g].sum()) / total:.3f} of today")
print(plan.density.as_dict())
