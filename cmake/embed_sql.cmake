# sl_embed_sql(<target> <symbol> <files...>)
#
# Turns SQL files into a generated C file that defines
#   const sl_sql_file_t <symbol>[]; const size_t <symbol>_count;
# so each folder owns its SQL while the binary needs no files at run time.
# The files are embedded in the order given, which is the migration order.
function(sl_embed_sql target symbol)
  set(out "${CMAKE_CURRENT_BINARY_DIR}/${symbol}.c")
  set(files ${ARGN})
  set(abs_files "")
  foreach(f IN LISTS files)
    list(APPEND abs_files "${CMAKE_CURRENT_SOURCE_DIR}/${f}")
  endforeach()
  add_custom_command(
    OUTPUT "${out}"
    COMMAND ${CMAKE_COMMAND} -DOUT=${out} -DSYMBOL=${symbol} "-DFILES=${abs_files}"
            -P "${PROJECT_SOURCE_DIR}/cmake/embed_sql_run.cmake"
    DEPENDS ${abs_files} "${PROJECT_SOURCE_DIR}/cmake/embed_sql_run.cmake"
    COMMENT "Embedding SQL into ${symbol}.c"
    # VERBATIM: FILES is a ;-list, which the shell would otherwise split into commands.
    VERBATIM)
  target_sources(${target} PRIVATE "${out}")
endfunction()
