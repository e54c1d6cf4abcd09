"""VTK export: the written file, read back by meshio (the library that wrote it), has the grid,
the heights, every metric and the holes where values are NaN; `landscape plot --vtk`."""

from __future__ import annotations

import types

import meshio
import numpy as np
import pytest
from click.testing import CliRunner

from landscape import io
from landscape.cli import main
from landscape.surface import Surface


def _surface_2d():
    x, y = np.linspace(-1, 1, 4), np.linspace(-0.5, 0.5, 3)
    xx, yy = np.meshgrid(x, y)
    loss = 1.0 + xx**2 + 2 * yy**2
    loss[1, 2] = np.nan  # diverged (computed) point
    acc = 1.0 / loss
    test = loss + 0.1
    test[2, 3] = np.nan  # never computed
    computed = np.ones((3, 4), bool)
    computed[2, 3] = False
    values = {"train_loss": loss, "train_acc": acc, "test_loss": test}
    return Surface(x, y, values, computed=computed)


@pytest.mark.parametrize("suffix", [".vtk", ".vtu"])
def test_a_2d_surface_reads_back_with_its_grid_values_and_holes(tmp_path, suffix):
    surf = _surface_2d()
    path = tmp_path / f"surf{suffix}"
    assert io.export_vtk(surf, path) == str(path)
    mesh = meshio.read(path)
    xx, yy = np.meshgrid(surf.x, surf.y)
    z = surf.values["train_loss"].ravel()
    finite = np.isfinite(z)
    np.testing.assert_array_equal(mesh.points[:, 0], xx.ravel())
    np.testing.assert_array_equal(mesh.points[:, 1], yy.ravel())
    np.testing.assert_array_equal(mesh.points[finite, 2], z[finite])
    assert np.all(mesh.points[~finite, 2] == np.nanmin(z))  # a hole's point: inside the bounds
    for name, values in surf.values.items():
        np.testing.assert_array_equal(mesh.point_data[name], values.ravel())  # NaN where NaN
    np.testing.assert_array_equal(mesh.point_data["computed"], surf.computed.ravel())
    np.testing.assert_array_equal(mesh.point_data["z_finite"], finite)
    (block,) = mesh.cells
    assert block.type == "quad"
    # 6 cells in a 3 x 4 grid; the NaN at [1, 2] (point 6) removes the 4 cells around it
    assert len(block.data) == 2
    np.testing.assert_array_equal(block.data[0], [0, 1, 5, 4])
    assert not np.isin(6, block.data)


def test_a_1d_surface_is_a_polyline(tmp_path):
    x = np.linspace(0, 1, 5)
    loss = np.array([1.0, 0.5, np.nan, 0.4, 0.9])
    surf = Surface(x, None, {"train_loss": loss})
    mesh = meshio.read(io.export_vtk(surf, tmp_path / "line.vtk"))
    np.testing.assert_array_equal(mesh.points[:, 0], x)
    assert np.all(mesh.points[:, 1] == 0)
    (block,) = mesh.cells
    assert block.type == "line"
    np.testing.assert_array_equal(block.data, [[0, 1], [3, 4]])  # no segment touches the NaN
    np.testing.assert_array_equal(mesh.point_data["train_loss"], loss)


def test_log_and_zmax_change_the_height_only(tmp_path):
    surf = _surface_2d()
    mesh = meshio.read(io.export_vtk(surf, tmp_path / "s.vtk", log=True, zmax=2.0))
    z = surf.values["train_loss"].ravel()
    finite = np.isfinite(z)
    np.testing.assert_allclose(mesh.points[finite, 2], np.log10(np.minimum(z[finite], 2.0)))
    np.testing.assert_array_equal(mesh.point_data["train_loss"], z)
    mesh = meshio.read(io.export_vtk(surf, tmp_path / "t.vtk", metric="test_loss"))
    assert np.isnan(mesh.point_data["test_loss"][-1]) and mesh.point_data["z_finite"][-1] == 0


def test_a_surface_file_path_is_read_and_a_single_row_gives_vertices(tmp_path):
    x, y = np.linspace(-1, 1, 3), np.array([0.0])
    d = types.SimpleNamespace(arrays={"w": np.ones(2)}, metadata={})
    path = tmp_path / "s.h5"
    io.create_surface_file(path, x=x, y=y, metrics=("train_loss",), directions=(d, d), attrs={})
    io.update_surface_file(path, {"train_loss": np.array([[1.0, 2.0, 3.0]])}, np.ones((1, 3)))
    mesh = meshio.read(io.export_vtk(path, tmp_path / "s.vtu"))
    (block,) = mesh.cells
    assert block.type == "vertex" and len(block.data) == 3
    np.testing.assert_array_equal(mesh.points[:, 2], [1.0, 2.0, 3.0])


def test_bad_arguments_are_refused_with_one_sentence(tmp_path):
    surf = _surface_2d()
    with pytest.raises(ValueError, match=r"Argument `path` must end in \.vtk or \.vtu"):
        io.export_vtk(surf, tmp_path / "s.vtp")
    with pytest.raises(ValueError, match="Argument `metric` must be one of"):
        io.export_vtk(surf, tmp_path / "s.vtk", metric="loss")
    empty = Surface(surf.x, None, {"train_loss": np.full(4, np.nan)})
    with pytest.raises(ValueError, match="no finite value of 'train_loss'"):
        io.export_vtk(empty, tmp_path / "s.vtk")
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file


def test_cli_plot_vtk(tmp_path):
    surf = _surface_2d()
    h5 = tmp_path / "s.h5"
    d = types.SimpleNamespace(arrays={"w": np.ones(2)}, metadata={})
    io.create_surface_file(
        h5, x=surf.x, y=surf.y, metrics=tuple(surf.values), directions=(d, d), attrs={}
    )
    io.update_surface_file(h5, surf.values, surf.computed)
    out = tmp_path / "s.vtk"
    result = CliRunner().invoke(main, ["plot", str(h5), "--vtk", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert not h5.with_suffix(".png").exists()  # --vtk without --out: only the VTK file
    np.testing.assert_array_equal(
        meshio.read(out).point_data["train_loss"], surf["train_loss"].ravel()
    )
    result = CliRunner().invoke(main, ["plot", str(h5), "--vtk", str(tmp_path / "s.obj")])
    assert result.exit_code == 2
    assert result.output.startswith("Error: Argument `path` must end in .vtk or .vtu.")


def test_a_path_in_a_missing_directory_is_refused_in_one_sentence(tmp_path):
    from landscape import io

    with pytest.raises(ValueError, match="must be in an existing directory; .* does not exist"):
        io.export_vtk("unused.h5", tmp_path / "missing" / "surf.vtk")
