# gnuplot serve_tiny.gp (run from its directory) -> serve_tiny.png
set terminal png size 900,900
set output 'serve_tiny.png'
set multiplot layout 2,1 title 'deepshard serving sweep (streaming /v1/completions)'
set logscale x 2
set grid
set key top left
set xlabel 'concurrent clients'
set ylabel 'output tokens/s'
set y2label 'requests/s'
set ytics nomirror
set y2tics
plot 'serve_tiny.dat' using 1:3 with linespoints lw 2 title 'output tokens/s', \
     '' using 1:2 axes x1y2 with linespoints lw 2 title 'requests/s (right)'
unset y2label
unset y2tics
set ytics mirror
set logscale y
set ylabel 'ms'
plot 'serve_tiny.dat' using 1:4 with linespoints lw 2 title 'TTFT p50', \
     '' using 1:6 with linespoints lw 2 dt 2 title 'TTFT p99', \
     '' using 1:7 with linespoints lw 2 title 'ITL p50', \
     '' using 1:9 with linespoints lw 2 dt 2 title 'ITL p99'
unset multiplot
