/*
 * sinks/sink_int.h - internals shared by the sink implementations.
 */
#ifndef SL_SINK_INT_H
#define SL_SINK_INT_H

#include "sinks/sink.h"

extern const sl_sink_ops_t sl_sink_kafka_ops;
extern const sl_sink_ops_t sl_sink_stdout_ops;
extern const sl_sink_ops_t sl_sink_file_ops;
extern const sl_sink_ops_t sl_sink_notify_ops;

/* The header every sink starts with; pipelines only see sl_sink_t. */
struct sl_sink {
    const sl_sink_ops_t *ops;
    sl_sink_env_t env;
};

#endif /* SL_SINK_INT_H */
