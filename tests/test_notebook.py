"""notebooks/cerebro_bp.ipynb runs top to bottom on the CPU with a tiny configuration."""

import nbformat
from nbclient import NotebookClient

from conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / 'notebooks' / 'cerebro_bp.ipynb'


def test_notebook_runs_clean(tmp_path):
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  index = next(i for i, cell in enumerate(notebook.cells)
               if 'parameters' in cell.metadata.get('tags', []))
  overrides = (f"NUM_SUBJECTS = 6\nMINUTES_PER_SUBJECT = 1.0\nMODEL_DEPTH = 1\n"
               f"NUM_EPOCHS = 1\nBATCH_SIZE = 8\nWORKDIR = {str(tmp_path / 'run')!r}\n")
  notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(overrides))
  NotebookClient(notebook, timeout=600, kernel_name='python3',
                 resources={'metadata': {'path': str(REPO_ROOT)}}).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == 'code' for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == 'error']
  text = '\n'.join(str(o.get('text', '')) + str(o.get('data', {}).get('text/markdown', ''))
                   for o in outputs)
  assert 'windows_kept' in text and '| test | SBP |' in text
  assert 'int8_dynamic - float32' in text and '| quality |' in text
  images = sum('image/png' in o.get('data', {}) for o in outputs)
  assert images >= 5  # windows, Bland-Altman and scatter plots
  assert (tmp_path / 'run' / 'model_int8' / 'sizes.json').is_file()
