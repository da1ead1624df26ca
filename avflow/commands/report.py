"""`python -m avflow report --workdir=RUN`: writes `<workdir>/report.html` (clips, audio, waveforms, metrics)."""
from absl import flags

from avflow.commands import no_arguments, parse_flags  # noqa: F401  (parse_flags is used by __main__)
from avflow.report.html import write_report

flags.DEFINE_string("workdir", None, "Run directory (holds eval.json and samples/).", required=True)


def main(argv):
  no_arguments(argv)
  print(write_report(flags.FLAGS.workdir))
