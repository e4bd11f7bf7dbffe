"""Run as a script: builds a small job and calls ``env.execute()``, which — with
TWINGRAPH_JOBMANAGER_URL set — submits the serialized graph and prints the job id."""
import sys

from twingraph.stream import FileSink, StreamExecutionEnvironment


def double(x: int) -> str:
    return str(2 * x)


if __name__ == "__main__":
    out, checkpoints = sys.argv[1], sys.argv[2]
    env = StreamExecutionEnvironment("RemoteDouble").set_parallelism(2)
    env.enable_checkpointing(50, checkpoints, fsync=False)
    env.from_collection(list(range(500))).map(double).add_sink(FileSink(out, fsync=False))
    print(env.execute())
