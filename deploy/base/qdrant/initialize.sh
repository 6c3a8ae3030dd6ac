#!/bin/sh
# Qdrant cluster start-up: the first pod founds the cluster, the others join it through the first.
# Peers find each other by the stable names of the headless Service (qdrant-N.qdrant-headless).
set -e
index=${HOSTNAME##*-}
first="http://qdrant-0.qdrant-headless:6335"
if [ "$index" = "0" ]; then
  exec ./entrypoint.sh --uri "$first"
fi
exec ./entrypoint.sh --bootstrap "$first" --uri "http://qdrant-${index}.qdrant-headless:6335"
