#!/bin/sh
# The container's entry point: `tme ARGS` (`docker run IMAGE run ...`), or one of the image's
# programs named first: mpirun/mpiexec, tme, python3, pvbatch, pvpython, bash, sh
# (`docker run IMAGE mpirun -n 4 tme run ...`, `docker run -it IMAGE bash`).
#
# Open MPI settings for ranks started by the container's own mpirun (one node, shared memory,
# more ranks than cores allowed) are set here, and only for that mpirun: baked into the image
# they would reach ranks that a host MPI starts through `apptainer exec` and break its transport.
set -e

# a user the image does not know (docker run --user "$(id -u):$(id -g)") has no writable home:
# give it one for the caches (compiled kernels, DOLFINx's JIT, matplotlib)
if [ -z "$HOME" ] || [ "$HOME" = / ] || ! [ -w "$HOME" ]; then
    HOME="${TMPDIR:-/tmp}/home-$(id -u)"
    export HOME
    mkdir -p "$HOME"
fi

case "${1:-}" in
    mpirun|mpiexec)
        export OMPI_MCA_btl="${OMPI_MCA_btl:-self,sm}"
        export OMPI_MCA_rmaps_base_oversubscribe="${OMPI_MCA_rmaps_base_oversubscribe:-1}"
        export PRTE_MCA_rmaps_default_mapping_policy="${PRTE_MCA_rmaps_default_mapping_policy:-:oversubscribe}"
        if [ "$(id -u)" = 0 ]; then   # docker run --user 0
            export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
        fi
        exec "$@" ;;
    tme | python3 | pvbatch | pvpython | bash | sh) exec "$@" ;;
    *) exec tme "$@" ;;
esac
