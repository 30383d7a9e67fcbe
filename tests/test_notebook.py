"""notebooks/cerebro_bp.ipynb runs top to bottom on the CPU with a tiny configuration."""

import nbformat
from nbclient import NotebookClient

from conftest import REPO_ROOT
from input_pipeline import pulsedb_writer, synthetic

NOTEBOOK = REPO_ROOT / 'notebooks' / 'cerebro_bp.ipynb'


def _run(tmp_path, overrides: str) -> tuple[str, int]:
  """Runs the notebook with its parameters overridden; (text and Markdown output, number
  of PNG images); fails on any error output."""
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  index = next(i for i, cell in enumerate(notebook.cells)
               if 'parameters' in cell.metadata.get('tags', []))
  overrides = (f"NUM_SUBJECTS = 6\nMINUTES_PER_SUBJECT = 1.0\nMODEL_DEPTH = 1\n"
               f"NUM_EPOCHS = 1\nBATCH_SIZE = 8\nWORKDIR = {str(tmp_path / 'run')!r}\n"
               + overrides)
  notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(overrides))
  NotebookClient(notebook, timeout=600, kernel_name='python3',
                 resources={'metadata': {'path': str(REPO_ROOT)}}).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == 'code' for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == 'error']
  text = '\n'.join(str(o.get('text', '')) + str(o.get('data', {}).get('text/markdown', ''))
                   for o in outputs)
  return text, sum('image/png' in o.get('data', {}) for o in outputs)


def test_notebook_runs_clean(tmp_path):
  """Every step; COMPARE_INT8 off: its two tables come from ptq.quantize_checkpoint's
  schemes and static grid, which the quantize command's and the static-INT8 tests run
  (the slowest part of the notebook, and the suite's critical path)."""
  text, images = _run(tmp_path, 'PRETRAIN = True\nPRETRAIN_EPOCHS = 1\nCOMPARE_INT8 = False\n')
  assert '| validation | mean_patch |' in text  # the pre-training cell's table
  assert (tmp_path / 'run' / 'pretrain' / 'model').is_dir()
  assert 'windows_kept' in text and '| test | SBP |' in text
  assert 'int8_dynamic - float32' in text and '| quality |' in text
  assert 'model_int8.tflite`: ' in text and (tmp_path / 'run' / 'model_int8.tflite').is_file()
  assert images >= 5  # windows, Bland-Altman and scatter plots
  assert (tmp_path / 'run' / 'model_int8' / 'sizes.json').is_file()


def test_notebook_takes_a_pulsedb_folder(tmp_path):
  folder = tmp_path / 'PulseDB'
  pulsedb_writer.write_synthetic_subsets(str(folder), synthetic.CohortConfig(
      num_subjects=8, minutes_per_subject=1.5))
  text, images = _run(tmp_path, f"RECORDS_SOURCE = 'pulsedb'\nRECORDS_DIR = {str(folder)!r}\n"
                                "PROTOCOL = 'pulsedb'\nCOMPARE_INT8 = False\n"
                                "LITERT = False\n")
  assert '"test_calbased": {' in text and '"windows_kept"' in text
  assert '| test_calbased | SBP |' in text and '| test_calfree | SBP |' in text
  assert 'test_calfree: calibration-free: subjects not in training' in text
  assert 'int8_dynamic - float32' in text and '| window | SBP (mmHg) |' in text
  assert images >= 3 + 6  # windows; Bland-Altman and scatter of validation and two tests
