"""The tidy table (rows, Parquet/CSV), the receive chains' gains, the grid of H, and the .mat and
map exports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from drivers.errors import ConfigError
from testbed.campaign.common import TABLE_COLUMNS, CampaignError
from testbed.campaign.plan import CampaignPlan


def point_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The tidy rows (one per antenna x client) of one ``point`` event's data."""
    h_re = np.asarray(record["h_re"], dtype=float)
    h_im = np.asarray(record["h_im"], dtype=float)
    snr = np.asarray(record["snr_db"], dtype=float)
    pos = np.asarray(record["positions_m"], dtype=float)
    read = np.asarray(record["read_m"], dtype=float)
    cells = np.asarray(record["cells"], dtype=int)
    rows = []
    for n in range(pos.shape[0]):
        for k in range(h_re.shape[0]):
            rows.append(
                {
                    "point": int(record["point"]),
                    "antenna": n,
                    "client": k,
                    "ix": int(cells[n, 0]),
                    "iy": int(cells[n, 1]),
                    "x_m": float(pos[n, 0]),
                    "y_m": float(pos[n, 1]),
                    "x_read_m": float(read[n, 0]),
                    "y_read_m": float(read[n, 1]),
                    "h_re": float(h_re[k, n]),
                    "h_im": float(h_im[k, n]),
                    "snr_db": float(snr[k, n]),
                    "radio_time_s": float(record.get("radio_time_s", 0.0)),
                    "time": float(record["time"]),
                }
            )
    return rows


def rows_to_columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    int_cols = {"point", "antenna", "client", "ix", "iy"}
    return {
        c: np.asarray([r[c] for r in rows], dtype=np.int64 if c in int_cols else np.float64)
        for c in TABLE_COLUMNS
    }


def write_table(run_dir: Path, columns: dict[str, np.ndarray], table_format: str) -> Path:
    """The tidy table: ``channels.parquet`` or ``channels.csv``, written atomically."""
    if table_format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = run_dir / "channels.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(pa.table({c: columns[c] for c in TABLE_COLUMNS}), tmp)
    elif table_format == "csv":
        path = run_dir / "channels.csv"
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write(",".join(TABLE_COLUMNS) + "\n")
            n = len(columns["point"])
            for i in range(n):
                f.write(",".join(repr(columns[c][i].item()) for c in TABLE_COLUMNS) + "\n")
    else:
        raise ConfigError(f"campaign.table_format: must be 'parquet' or 'csv' (got {table_format!r})")
    tmp.replace(path)
    return path


def read_table(path: str | Path) -> dict[str, np.ndarray]:
    """A campaign table (Parquet or CSV) as columns of numpy arrays."""
    path = Path(path)
    if not path.is_file():
        raise CampaignError(f"{path}: no campaign table (channels.parquet or channels.csv)")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return {c: table.column(c).to_numpy() for c in table.column_names}
    if path.suffix == ".csv":
        data = np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding="utf-8")
        return {c: np.atleast_1d(data[c]) for c in data.dtype.names or ()}
    raise CampaignError(f"{path}: a campaign table must be .parquet or .csv")


def find_table(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    for name in ("channels.parquet", "channels.csv"):
        if (run_dir / name).is_file():
            return run_dir / name
    raise CampaignError(
        f"{run_dir}: no campaign table (channels.parquet or channels.csv); finish the campaign"
    )


def estimate_chain_gains(columns: dict[str, np.ndarray]) -> np.ndarray:
    """Each receive chain's complex gain relative to antenna 0's, from the cells two antennas
    both measured (the strips' shared columns).

    Real receivers differ per chain (LO phase after a retune, cable, gain): antenna n reports
    g_n h(r). Where antennas n and m measured the same cells, the least-squares ratio
    sum conj(h_m) h_n / sum |h_m|^2 estimates g_n / g_m; chaining the ratios from antenna 0 along
    the shared columns gives every g_n (g_0 = 1). An antenna that shares no cell with the others
    keeps g = 1 (nothing to tell). Divide antenna n's estimates by g_n to put all on one reference.
    """
    antenna = columns["antenna"].astype(int)
    num = int(antenna.max()) + 1 if antenna.size else 0
    h = columns["h_re"] + 1j * columns["h_im"]
    keys = np.stack([columns["client"], columns["iy"], columns["ix"]], axis=1).astype(int)
    per_antenna = []
    for n in range(num):
        sel = antenna == n
        per_antenna.append({tuple(key): value for key, value in zip(keys[sel], h[sel], strict=True)})
    ratio: dict[tuple[int, int], complex] = {}
    for n in range(num):
        for m in range(num):
            shared = per_antenna[n].keys() & per_antenna[m].keys() if n != m else set()
            if shared:
                hn = np.array([per_antenna[n][c] for c in shared])
                hm = np.array([per_antenna[m][c] for c in shared])
                power = float(np.vdot(hm, hm).real)
                if power > 0:
                    ratio[(n, m)] = complex(np.vdot(hm, hn) / power)  # g_n / g_m
    gains = np.full(num, np.nan + 0j)
    if num:
        gains[0] = 1.0
    frontier = [0] if num else []
    while frontier:  # breadth-first along the shared columns
        m = frontier.pop(0)
        for n in range(num):
            if np.isnan(gains[n]) and (n, m) in ratio:
                gains[n] = ratio[(n, m)] * gains[m]
                frontier.append(n)
    gains[np.isnan(gains)] = 1.0
    return gains


def grid_channels(
    columns: dict[str, np.ndarray],
    nx: int,
    ny: int,
    num_clients: int,
    chain_gains: np.ndarray | None = None,
) -> np.ndarray:
    """H on the grid, (U, ny, nx) complex: the mean over antennas that measured a cell (each
    divided by its ``chain_gains`` entry if given); NaN where none did."""
    total = np.zeros((num_clients, ny, nx), dtype=complex)
    count = np.zeros((num_clients, ny, nx))
    h = columns["h_re"] + 1j * columns["h_im"]
    if chain_gains is not None:
        h = h / np.asarray(chain_gains)[columns["antenna"].astype(int)]
    k, iy, ix = columns["client"].astype(int), columns["iy"].astype(int), columns["ix"].astype(int)
    np.add.at(total, (k, iy, ix), h)
    np.add.at(count, (k, iy, ix), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    out[count == 0] = np.nan + 1j * np.nan
    return out


def write_mat(
    run_dir: Path,
    columns: dict[str, np.ndarray],
    plan: CampaignPlan,
    h_grid: np.ndarray,
    chain_gains: np.ndarray | None = None,
) -> Path:
    """``campaign.mat`` for MATLAB: the grid, H (clients x ny x nx, complex, chain-corrected),
    the chain gains, and the raw table."""
    from scipy.io import savemat

    path = run_dir / "campaign.mat"
    tmp = run_dir / "campaign.tmp.mat"
    savemat(
        tmp,
        {
            "x_m": plan.x_m,
            "y_m": plan.y_m,
            "H": h_grid,
            "chain_gains": np.ones(plan.num_antennas) if chain_gains is None else chain_gains,
            "table": {c: columns[c] for c in TABLE_COLUMNS},
        },
        do_compression=True,
    )
    tmp.replace(path)
    return path


def write_channel_map(
    run_dir: Path, plan: CampaignPlan, h_grid: np.ndarray, chain_gains: np.ndarray | None = None
) -> Path:
    """``channel_map.npz``: the gain map summed over clients (what the report draws), and H."""
    with np.errstate(divide="ignore", invalid="ignore"):
        gain_db = 10.0 * np.log10(np.sum(np.abs(h_grid) ** 2, axis=0))
    path = run_dir / "channel_map.npz"
    tmp = run_dir / "channel_map.tmp.npz"
    gains = np.ones(plan.num_antennas, dtype=complex) if chain_gains is None else np.asarray(chain_gains)
    np.savez(
        tmp,
        x_m=plan.x_m,
        y_m=plan.y_m,
        gain_db=gain_db,
        h_re=h_grid.real,
        h_im=h_grid.imag,
        chain_gains=gains,
    )
    tmp.replace(path)
    return path
